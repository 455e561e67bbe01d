"""Deprecated alias: the verifiers moved to `distillkit.verify.verifiers` (filter and generate share them).

`import distillkit.filter.verifiers.math` (and .base, .code, .format, .judge, .readability) keeps working for one
release and gives the moved module itself; this alias goes in the next release.
"""

import sys
import warnings

from distillkit.verify.verifiers import base, code, format, judge, math, readability

for _module in (base, code, format, judge, math, readability):
    sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module
warnings.warn("distillkit.filter.verifiers moved to distillkit.verify.verifiers; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
