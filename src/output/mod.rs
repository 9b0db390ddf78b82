//! Image files, sidecars and index files. (being written)
