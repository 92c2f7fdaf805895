//! The two-person rule (ADR 0004), one implementation for every kind:
//! the pure decision on a change, and the change-request records.

mod condition;
mod decision;
mod gate;
mod policy;
mod requests;
#[cfg(test)]
mod tests;

pub use condition::*;
pub use decision::*;
pub use gate::*;
pub use policy::*;
pub use requests::*;
