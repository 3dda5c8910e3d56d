"""Process start-up of the command line: huge pages for large CPU tensors (:func:`tune_allocator`), and MONAI imported
without packages it would load only for models we never use (:func:`install`).

``import monai`` executes every MONAI submodule (``load_submodules`` in ``monai/__init__.py``), and each
``optional_import`` there imports its package whenever it is installed (MONAI itself never imports these
unconditionally): with ``ldp-med[text]`` installed, Transchex pulls in ``transformers`` (~5-7 s on a
2-core machine whose ``ldp-med autoencode`` takes 11-18 s), the profiler ``pandas``, the notebook and
plotting helpers ``matplotlib.pyplot``, the ultrasound and signal transforms ``scipy.signal`` and the
embedding-collapse metric ``sklearn`` (~3 s together), all before any work starts. :func:`install` hides
those packages while MONAI's package executes (``sys.modules[name] = None``, Python's own "not
importable" marker, so MONAI keeps its placeholders for them); afterwards they import normally, e.g.
the ``--prompt`` text encoder's ``transformers``. Only :func:`ldp_med.cli.main` calls it: code that
imports ``ldp_med`` as a library gets MONAI exactly as MONAI imports itself, and torch's allocator as the
environment sets it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

#: Packages MONAI's import would load for models and utilities that ldp-med does not use.
HIDDEN_DURING_MONAI_IMPORT = ("transformers", "pandas", "matplotlib.pyplot", "scipy.signal", "sklearn")


class HideWhileImporting(importlib.abc.MetaPathFinder):
    """A one-shot import hook: while package ``target`` executes its first import, ``hidden`` are unimportable.

    Packages already imported, or imported once ``target`` is done, are not affected. The hook removes
    itself from ``sys.meta_path`` as soon as ``target`` is looked up.
    """

    def __init__(self, target: str, hidden: tuple[str, ...]):
        self.target, self.hidden = target, tuple(hidden)

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.target:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        hide = [name for name in self.hidden if name not in sys.modules]
        run = spec.loader.exec_module

        def exec_module(module):
            for name in hide:
                sys.modules[name] = None
            try:
                run(module)
            finally:
                for name in hide:
                    if name in sys.modules and sys.modules[name] is None:
                        del sys.modules[name]

        spec.loader.exec_module = exec_module
        return spec


#: Environment the command line sets before torch is imported, unless the user set it: PyTorch's own switch
#: (c10 ``alloc_cpu``, PyTorch >= 2.2) that advises transparent huge pages for CPU tensors of 2 MB and more. Every
#: array of a 1 mm volume is far above glibc's mmap threshold, so each is mapped and unmapped again, and every 4 kB
#: of it page-faults on first touch: a 256x256x192 head at R=8 took 137 M page faults, more system than user time.
#: With huge pages (and ``MRIOperator.normal`` in place) 4 M faults, 680 -> 407 s, the same image (docs/results.md,
#: "Huge pages for large tensors"). Read once, at torch's first allocation: library users set it before importing
#: torch.
ALLOCATOR_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}


def tune_allocator(environ=os.environ) -> None:
    """Set :data:`ALLOCATOR_ENV` in ``environ`` where the user has not set it (no effect once torch has allocated)."""
    for name, value in ALLOCATOR_ENV.items():
        environ.setdefault(name, value)


def install(target: str = "monai", hidden: tuple[str, ...] = HIDDEN_DURING_MONAI_IMPORT) -> bool:
    """Hide ``hidden`` while ``target`` is first imported; False (nothing done) if it is already imported."""
    if target in sys.modules or any(isinstance(f, HideWhileImporting) and f.target == target for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, HideWhileImporting(target, hidden))
    return True
