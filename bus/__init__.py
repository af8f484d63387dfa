"""The bus: event contracts, subjects, streams, the one publish path, zones,
signing and settings. Everything else depends on this package; it depends on
nothing of ours and never imports torch or fastapi."""
