import sys
from pathlib import Path

# The checkout under test comes first, whatever else is installed; then the test helpers.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
