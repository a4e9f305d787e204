"""ctest entry for QMRISegment inside Slicer: runs the module's own QMRISegmentTest (synthetic inputs, no downloads).

The same Logic is tested outside the app with pytest on a slicer-core MRML scene (Testing/slicer_modules/).
"""

import unittest

import slicer


class QMRISegmentModuleTest(unittest.TestCase):
    def test_module(self):
        slicer.util.selectModule("QMRISegment")
        module = slicer.util.getModule("QMRISegment")
        self.assertIsNotNone(module)
        import QMRISegment

        QMRISegment.QMRISegmentTest().runTest()


if __name__ == "__main__":
    unittest.main()
