//! `drover key SERIAL`: the device key a device must hold, derived from
//! the master key as the drivers derive it (CWP/1 §2), for provisioning
//! firmware. The master key itself is never printed, not even in an error.

use cwp::DeviceKey;

use crate::args::KeyArgs;
use crate::exit::Exit;
use crate::output;

/// `drover key`.
pub fn run(args: &KeyArgs, json: bool) -> anyhow::Result<Exit> {
    let serial = crate::parse_serial(&args.serial)?;
    let master = crate::config::master_key()?;
    let key = hex::encode(DeviceKey::derive(&master, &serial).as_bytes());
    if json {
        output::line(&serde_json::json!({ "serial": serial.as_str(), "device_key": key }).to_string())?;
    } else {
        output::line(&key)?;
    }
    Ok(Exit::Success)
}
