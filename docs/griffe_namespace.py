"""A Griffe extension for the docs build: load `unimplicit` subpackages that have no
`__init__.py` (namespace packages), which Griffe's static finder skips."""

import pathlib

import griffe


class NamespaceSubpackages(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs):
        if pkg.name != "unimplicit" or pkg.filepath is None:
            return
        root = pathlib.Path(str(pkg.filepath)).parent
        for directory in sorted(p for p in root.iterdir() if p.is_dir()):
            if directory.name in pkg.members or (directory / "__init__.py").exists():
                continue
            files = sorted(directory.glob("*.py"))
            if not files:
                continue
            sub = griffe.Module(directory.name, filepath=[directory], parent=pkg)
            pkg.set_member(directory.name, sub)
            for path in files:
                module = griffe.visit(
                    path.stem,
                    filepath=path,
                    code=path.read_text(),
                    parent=sub,
                    extensions=loader.extensions,
                    docstring_parser=loader.docstring_parser,
                    docstring_options=loader.docstring_options,
                    lines_collection=loader.lines_collection,
                    modules_collection=loader.modules_collection,
                )
                sub.set_member(path.stem, module)
