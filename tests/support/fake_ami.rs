//! Fake AMI server.
