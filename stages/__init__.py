"""One module per stage: typed config in, typed artifacts out.

Importing this package imports every module in it, so each stage (and each
export back-end its module registers) is in the registries: adding a stage or a
back-end is adding a module here, with no list to edit. Then the stages and
back-ends of installed plug-ins register (``foundation/plugins.py``): planning
consults every stage, and ``export.targets`` every back-end.
"""

import importlib
import pkgutil

from foundation import plugins

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

for _group in ("stages", "backends"):
    plugins.load_all(_group)
