"""Fetching, split by concern (the way mountpoint-s3's `prefetch/` and rclone's `vfscache` are).

Data flows one way: `osufs.library` (the facade fs.py calls) -> these modules -> the store and
the sources; nothing here imports what is above it. From the bottom up:

- context: what every module shares (store, planner, flights, limits, refused members);
- planner: which source serves a request;
- ingest: THE write protocol (temp file, hash, fsync, rename, index) and whole-archive ingest;
- provisional: a set listed from its difficulties' .osu files;
- remote: the sets reached this session (their RemoteArchive, another copy's members);
- listings: a set's listing, from the store, provisionally, or from its archive's directory;
- members: a member's bytes, the cheapest way, one flight per member; large cold ones stream
  (streaming: the partial file readers wait on);
- names: a set's catalogue record, discovering an unlisted set;
- readahead: the .osu files of the next sets, fetched ahead of a scan;
- handles: open files (content files and streams), counted so eviction spares their sets.
"""
