"""Screenshot a run's report.html with headless Chromium, to check what a reader sees.

    python benchmarks/screenshot_report.py reports/quickstart/latest/report.html bench/report.png

Needs a `chromium` binary (Debian: apt-get install chromium). The PNG is for
looking at, not for git (bench/*.png is ignored).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    page, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("no chromium on PATH; apt-get install chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,4200", f"--screenshot={out}", page.as_uri()], check=True,
                   capture_output=True, timeout=120)
    print(out)


if __name__ == "__main__":
    main()
