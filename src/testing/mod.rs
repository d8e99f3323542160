//! Test and fuzz support, built only for the crate's tests and the fuzz targets
//! (`feature = "fuzzing"`): a harness that drives scope cores like the network layer does,
//! the hostile-input properties, the simulator, and the fuzz targets' entry points.

pub(crate) mod codec_hostile;
pub(crate) mod drive;
pub(crate) mod harness;
#[cfg(test)]
pub(crate) mod hosts;
pub(crate) mod seeds;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(test)]
mod hostile_input;
#[cfg(test)]
mod sim;
