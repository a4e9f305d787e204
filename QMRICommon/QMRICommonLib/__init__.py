"""What both QMRI modules use, without Qt (runs on a real MRML scene inside or outside Slicer).

``parameters``    parameter specs and :class:`~.parameters.ScriptedNodeParameters`, their headless storage
``mrmlio``        volume nodes <-> arrays / :class:`qmricore.io.Volume`, NIfTI import and export, map naming
``runner``        :class:`~.runner.BackgroundRunner`: a ``python -m qmricore ... --progress-lines`` run, polled;
                  :class:`~.runner.Job`: a run and what importing its result needs
``shipped``       where the shipped model files are, and the rule for "empty path: the shipped model"
``dependencies``  the Python packages the modules need, checked and installed into Slicer's Python on first use
``headless``      a scene with the module logics Slicer's utilities expect, for scripts outside the app

Both module folders sit next to ``QMRICommon`` (installed: one scripted-modules folder; source tree: each
module folder on Slicer's module path), and both modules list ``QMRICommon`` in their dependencies, so Slicer
loads it first and ``import QMRICommonLib`` works with no ``sys.path`` edits.
"""
