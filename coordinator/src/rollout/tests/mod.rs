//! Engine tests without sockets: a fake fleet answers the engine's commands.

mod bluegreen;
mod canary;
mod fleet;
mod found;
mod persist;
mod scenarios;
mod seeded;
mod spec;
mod staging;
