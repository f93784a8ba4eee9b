"""A site of several SMPs: the site file, the client's choice among SMPs
(ConfigMgr's boundary groups and SMP selection), and capacity planning.

Each SMP stays a whole smpfs with its own smp.db and storage; what a site adds
is *selection*, done by the client: there is no distributed state. Layering:
above ``smpfs.network`` (whose client it drives), below the CLI; ``plan`` and
``sitefile`` are pure (no network, no state).
"""
