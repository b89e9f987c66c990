from osufs.cli import main

main(prog_name="osufs")
