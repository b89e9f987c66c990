"""osufs: mount the osu! beatmap library as a lazy FUSE filesystem."""

__version__ = "0.1.0"
