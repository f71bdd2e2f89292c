"""Number types that bound a setting: `--help` shows the range, and the parser refuses values outside it."""

from __future__ import annotations

from jsonargparse.typing import restricted_number_type

# A probability-like share in [0, 1): `--help` shows the range, and the CLI refuses values outside it.
UnitShare = restricted_number_type("UnitShare", float, [(">=", 0), ("<", 1)], join="and")


AtLeastTwo = restricted_number_type("AtLeastTwo", int, (">=", 2))
