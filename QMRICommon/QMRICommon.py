"""QMRICommon: the hidden module that carries ``QMRICommonLib``, what QMRISynth and QMRISegment share.

It has no panel.  Both modules list it in their dependencies, so Slicer loads it (and puts its folder on
``sys.path``) before either of them.
"""

from __future__ import annotations

from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class QMRICommon(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("qMRI Common")
        self.parent.categories = ["Developer Tools"]
        self.parent.dependencies = []
        self.parent.contributors = ["qMRI synthesis team"]
        self.parent.helpText = _("Shared code of the qMRI Synth and qMRI Segment modules (no panel).")
        self.parent.acknowledgementText = _("Built on the qmricore library.")
        self.parent.hidden = True
