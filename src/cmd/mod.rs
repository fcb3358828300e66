//! One file per subcommand. Each is thin: it reads what it needs, calls the
//! engine or the store, and says what happened.

pub mod demo;
pub mod run;
pub mod status;
