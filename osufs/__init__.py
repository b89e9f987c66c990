"""osufs: mount the osu! beatmap library as a lazy FUSE filesystem."""
