//! The Redis protocol (RESP) port: [`frame`] turns bytes into commands and replies into bytes.

pub mod frame;
