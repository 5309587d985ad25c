"""Make `import shapes` work for these tests wherever pytest is run from."""

import sys
from pathlib import Path

TOOLS = str(Path(__file__).resolve().parents[1])
if TOOLS not in sys.path:
    sys.path.append(TOOLS)  # appended: shadows nothing already importable
