//! The typed AI Horde v2 client. (being written)
