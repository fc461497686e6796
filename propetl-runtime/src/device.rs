//! Choosing a device by name: `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`.
//!
//! GPU backends are cargo features (`cuda`, `metal`) forwarded to Candle; a CPU build needs no
//! GPU toolkit and says which feature to enable when a GPU is asked for.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};

/// A device by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU (default).
    #[default]
    Cpu,
    /// CUDA GPU with this ordinal (needs the `cuda` feature).
    Cuda(usize),
    /// Metal GPU with this ordinal (needs the `metal` feature).
    Metal(usize),
}

impl DeviceSpec {
    /// Open the device. Errors name the cargo feature a GPU needs when this build lacks it.
    pub fn open(&self) -> Result<Device> {
        let missing = |feature: &str| {
            PetlError::config(format!(
                "device `{self}` needs a build with the `{feature}` cargo feature \
                 (e.g. `cargo install --path propetl-cli --features {feature}`); this build is CPU-only"
            ))
        };
        match *self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(missing("cuda"));
                }
                Device::new_cuda(n).map_err(|e| PetlError::config(format!("device `{self}`: {e}")))
            }
            DeviceSpec::Metal(n) => {
                if !cfg!(feature = "metal") {
                    return Err(missing("metal"));
                }
                Device::new_metal(n).map_err(|e| PetlError::config(format!("device `{self}`: {e}")))
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = PetlError;
    fn from_str(s: &str) -> Result<Self> {
        let (kind, ordinal) = match s.split_once(':') {
            Some((k, n)) => {
                let n = n.parse::<usize>().map_err(|_| {
                    PetlError::config(format!(
                        "device `{s}`: the ordinal after `:` must be a number, e.g. cuda:0"
                    ))
                })?;
                (k, n)
            }
            None => (s, 0),
        };
        match (kind, s.contains(':')) {
            ("cpu", false) => Ok(DeviceSpec::Cpu),
            ("cuda", _) => Ok(DeviceSpec::Cuda(ordinal)),
            ("metal", _) => Ok(DeviceSpec::Metal(ordinal)),
            _ => Err(PetlError::config(format!(
                "unknown device `{s}` (cpu, cuda, cuda:N, metal, metal:N)"
            ))),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = PetlError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:1", DeviceSpec::Cuda(1)),
            ("metal", DeviceSpec::Metal(0)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:x", "cpu:1", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_only_build_names_the_feature() {
        if cfg!(feature = "cuda") {
            return;
        }
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("`cuda` cargo feature"), "{e}");
        assert!(DeviceSpec::Cpu.open().is_ok());
    }
}
