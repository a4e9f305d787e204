"""ctest entry for QMRISynth inside Slicer: runs the module's own QMRISynthTest (synthetic inputs, no downloads).

The same Logic is tested outside the app with pytest on a slicer-core MRML scene (Testing/slicer_modules/).
"""

import unittest

import slicer


class QMRISynthModuleTest(unittest.TestCase):
    def test_module(self):
        slicer.util.selectModule("QMRISynth")
        module = slicer.util.getModule("QMRISynth")
        self.assertIsNotNone(module)
        import QMRISynth

        QMRISynth.QMRISynthTest().runTest()


if __name__ == "__main__":
    unittest.main()
