//! End-to-end tests of the `imgconv` command, checked against independent tools (qemu-img,
//! md5sum, sha256sum). A missing tool fails the test: the README's test command installs them.

mod differential;
mod errors;
mod export;
mod export_api;
mod failures;
mod inspect;
mod packages;
mod qcow2;
mod raw;
mod reproducible;
mod serve;
mod tools;
mod vdi;
mod vhd;
mod vhdx;
mod vmdk;

pub use tools::*;
