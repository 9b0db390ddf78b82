//! The sled ledger. (being written)
