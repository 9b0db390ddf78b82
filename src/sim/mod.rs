//! The simulated AI Horde. (being written)
