"""The page of a search (``search.html.j2``): the Pareto plot of test top-1 against p90 latency,
every candidate and precision a point, the budget drawn and the chosen file marked, and the table
that says why each candidate was dropped or not chosen."""

from __future__ import annotations

from pathlib import Path

from pipeline.report_charts import png


def pareto_plot(document: dict) -> str | None:
    """Top-1 against p90 at the budget's batch: a marker per target, the front joined, the budget a line."""
    points = document["points"]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    budget = document["search"]["budget"]["latency"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    markers = dict(zip(dict.fromkeys(p["target"] for p in points), "osD^v<>Pp*hX", strict=False))
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(p["candidate"] for p in points))}
    for p in points:
        ax.scatter(p["p90_ms"], p["top1"], marker=markers[p["target"]], color=colours[p["candidate"]], s=55,
                   alpha=0.9 if p["within_budget"] else 0.45, edgecolors="black" if p["chosen"] else "none",
                   linewidths=1.5)
    # the front of this plot's two axes (the table's also weighs size): a step, the best top-1 to be
    # had at each latency up to the next point of the front
    front = sorted((p for p in points if not any(q["top1"] >= p["top1"] and q["p90_ms"] <= p["p90_ms"] and
                                                 (q["top1"], q["p90_ms"]) != (p["top1"], p["p90_ms"]) for q in points)),
                   key=lambda p: p["p90_ms"])
    ax.plot([p["p90_ms"] for p in front], [p["top1"] for p in front], color="#555", linewidth=0.8, linestyle=":",
            drawstyle="steps-post", label="Pareto front (top-1, p90)")
    dropped = [r for r in document["candidates"] if r["status"] == "dropped"]
    bottom = ax.get_ylim()[0]
    for row in dropped:  # no accuracy: their untrained p90, on the axis
        ax.scatter(row["probe"]["fastest_ms"], bottom, marker="x", color="#999", s=40, clip_on=False)
        ax.annotate(row["candidate"], (row["probe"]["fastest_ms"], bottom), xytext=(0, 6), textcoords="offset points",
                    fontsize=7, color="#777", ha="center")
    if dropped:
        ax.scatter([], [], marker="x", color="#999", label="dropped before training (untrained p90)")
    ax.axvline(budget["max_p90_ms"], color="tab:red", linestyle="--", linewidth=1,
               label=f"budget: p90 {budget['max_p90_ms']:g} ms")
    chosen = document.get("chosen")
    if chosen:
        ax.annotate(f"chosen: {chosen['candidate']} {chosen['target']}", (chosen["p90_ms"], chosen["top1"]),
                    xytext=(8, -14), textcoords="offset points", fontsize=8)
    for name, colour in colours.items():  # legend: a colour per candidate, a marker per file
        ax.scatter([], [], color=colour, marker="o", label=name)
    for target, marker in markers.items():
        ax.scatter([], [], color="#888", marker=marker, label=target)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis collide
    ax.set_xlabel(f"p90 latency at batch {budget['batch']} (ms, log scale; this machine)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"search {document['search']['name']}: faded = over budget, outlined = chosen")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    return png(fig)


def render_html(document: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["j2"]))
    return env.get_template("search.html.j2").render(search=document, plot=pareto_plot(document))


def markdown(document: dict) -> str:
    """The candidates table a terminal, a README or a pull request shows."""
    budget = document["search"]["budget"]
    lines = [f"budget: p90 <= {budget['latency']['max_p90_ms']:g} ms at batch {budget['latency']['batch']}"
             + (f", <= {budget['max_size_mb']:g} MB" if budget.get("max_size_mb") else ""), "",
             "| candidate | file | test top-1 | p90 ms | MB | within budget | pareto | note |",
             "|---|---|---|---|---|---|---|---|"]
    for row in document["candidates"]:
        mine = [p for p in document["points"] if p["candidate"] == row["candidate"]]
        if not mine:
            lines.append(f"| {row['candidate']} | - | - | - | - | no | - | {row['status']}: {row['why']} |")
        for p in mine:
            lines.append(f"| {p['candidate']} | {p['target']} | {p['top1']:.2f} | {p['p90_ms']:.3g} | "
                         f"{p['size_mb']:.2f} | {'yes' if p['within_budget'] else 'no'} | "
                         f"{'yes' if p['pareto'] else ''} | {'**chosen**' if p['chosen'] else p['why']} |")
    return "\n".join(lines)
