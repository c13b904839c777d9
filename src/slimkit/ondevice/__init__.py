"""What runs on the device: the variant selector (numpy and the runtime only; no torch, no slimkit training code).

``slimkit optimize --variants K`` copies ``selector.py`` next to the variants and their ``manifest.json``, so the
device needs only that folder."""
