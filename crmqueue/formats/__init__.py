"""File formats for imports and exports: streaming readers and writers."""
