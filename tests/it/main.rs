//! oim's integration tests: one binary (DESIGN §8). Modules that need the local control plane
//! read its kubeconfig and registries from the environment `make test` sets up.

mod agent;
mod bench;
mod bounds;
mod cache;
mod cli;
mod cluster;
mod crosscheck;
mod download;
mod dra;
mod environment;
mod estimate;
mod fake_hub;
mod faults;
mod fixtures;
mod install;
mod leader;
mod multinode;
mod nim;
mod operator;
mod ownership;
mod pipeline;
mod profiles;
mod rbac;
mod render;
mod routing;
mod sim;
mod sources;
mod study;
mod trust;
