//! The one integration-test binary: every end-to-end suite is a module of it,
//! so `cargo test` links once and the shared helpers live in `common`.

mod a1111;
mod alchemy;
mod architecture;
mod cli;
mod client_sim;
mod common;
mod dataset;
mod docs;
mod export;
mod formats_v1;
mod horde_client;
mod key_pool;
mod manifest;
mod manifest_v2;
mod output;
mod pacing;
mod readme;
mod reliability;
mod report;
mod reroll_merge;
mod run;
mod shards;
mod sim;
mod sim_alchemy;
mod source_images;
mod store;
mod unattended;
mod views;
