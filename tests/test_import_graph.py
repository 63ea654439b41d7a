"""No import circle between the project's files (grimp, the graph import-linter builds): a circle
is what made the CLI need an import at the bottom of a module and a ``__main__`` workaround, and
what tied the data loaders together. Imports under ``TYPE_CHECKING`` do not run and do not count."""

from __future__ import annotations

import grimp

PACKAGES = ("pipeline", "foundation", "stages", "stagekit", "cskd", "exports", "serving")


def import_circles(graph) -> list[list[str]]:
    """The strongly connected sets of modules larger than one (Tarjan, iteratively)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack, on_stack, circles = [], set(), []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    circles.append(sorted(members))
    return circles


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=True)
    assert import_circles(graph) == []


def test_a_circle_is_found():
    """The finder itself, on a graph with one circle of three and a module outside it."""
    graph = grimp.ImportGraph()
    for importer, imported in (("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")):
        graph.add_import(importer=importer, imported=imported)
    assert import_circles(graph) == [["a", "b", "c"]]


def test_no_package_imports_itself_through_others():
    """The packages are floors: before the foundation left ``pipeline/``, ``pipeline -> stages ->
    pipeline.core`` was a circle between packages that the layers contract could only excuse."""
    modules = grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=True)
    packages = grimp.ImportGraph()
    for module in modules.modules:
        for imported in modules.find_modules_directly_imported_by(module):
            if module.split(".")[0] != imported.split(".")[0]:
                packages.add_import(importer=module.split(".")[0], imported=imported.split(".")[0])
    assert {"pipeline", "stages", "foundation"} <= set(packages.modules)  # the graph is the real one
    assert import_circles(packages) == []


def test_no_stage_imports_another():
    """What stages share lives in stagekit, the foundation or their records (import-linter's
    independence contract says the same in `make lint`)."""
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=True)

    def stage(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if parts[0] == "stages" and len(parts) > 1 else None

    between = sorted((importer, imported) for importer in graph.modules if stage(importer)
                     for imported in graph.find_modules_directly_imported_by(importer)
                     if stage(imported) and stage(imported) != stage(importer))
    assert len({stage(m) for m in graph.modules if stage(m)}) >= 14  # the real stages
    assert between == []


def test_the_foundation_imports_no_method_code():
    """The foundation (stage contract, store, manifest core, records, registries) reaches no ``cskd``
    module, directly or through another package: the method's sections register from stagekit."""
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=True)
    assert "foundation.manifest" in graph.modules and "cskd.config" in graph.modules
    assert not graph.chain_exists(importer="foundation", imported="cskd", as_packages=True)
