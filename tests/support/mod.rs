//! Test doubles shared by every integration test: a fake AMI server and a fake Bitrix24 portal,
//! both on 127.0.0.1 port 0. Each test binary uses only some of it.
#![allow(dead_code)]

pub mod fake_ami;
pub mod fake_bitrix;
