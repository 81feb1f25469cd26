"""Pure Python shared by every layer: no Beam, no Google Cloud."""
