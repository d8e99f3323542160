//! What the application sees of registered names: who holds one, and the message a process
//! gets when it loses one.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::vocab::meta::Meta;
use crate::vocab::pid::Pid;

/// The topic of the message a process gets in its inbox when it loses a registered name
/// (listen to it with [`Process::listen`](crate::Process::listen)); the payload decodes to a
/// [`NameLost`], and the message comes from the winner.
pub const NAME_LOST_TOPIC: &str = "pg.name_lost";

/// The payload of a [`NAME_LOST_TOPIC`] message: the process's claim of `name` met another
/// one (they registered at about the same time, or on two sides of a partition that healed)
/// and the other won; the process holds the name no more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameLost {
    /// The scope of the name.
    pub scope: String,
    /// The name.
    pub name: String,
    /// The process that holds it.
    pub winner: Pid,
}

/// A registered name's holder, from
/// [`Instance::whereis_with_meta`](crate::Instance::whereis_with_meta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The process that holds the name.
    pub pid: Pid,
    /// The metadata it registered the name with (the latest, if it registered again).
    pub meta: Meta,
    /// When it first registered the name, by the clock of its node: of two claims of a name,
    /// the earlier wins.
    pub registered_at: SystemTime,
}
