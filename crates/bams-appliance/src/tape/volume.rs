//! BAMS tape volumes: file 0 of every cartridge is a label — one JSON record naming the
//! format, barcode, volume id and media pool — followed by a filemark. The label is what
//! lets a cartridge be identified (and refused, or recycled) without the catalog database.

use serde::{Deserialize, Serialize};

use super::device::{Record, TapeDevice, TapeError};
use crate::ApplianceError;

/// The label's format tag; a reader refuses labels of other formats.
pub const FORMAT: &str = "bams-tape/1";

/// What file 0 of a BAMS cartridge says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Label {
    /// Always [`FORMAT`].
    pub format: String,
    /// The cartridge's barcode (also checked against the changer's on load).
    pub barcode: String,
    /// Random id of this labeling: relabeling makes a new volume.
    pub volume_id: String,
    /// Media pool it belongs to.
    pub pool: String,
    /// When it was labeled (RFC 3339).
    pub labeled_at: String,
}

/// A media pool name: 1-64 letters, digits, `-` or `_` (it is written into every label).
pub fn validate_pool(pool: &str) -> Result<(), String> {
    if pool.is_empty() || pool.len() > 64 || !pool.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("pool {pool:?} must be 1-64 letters, digits, - or _"));
    }
    Ok(())
}

/// Read the label at the beginning of the tape: `None` for a blank cartridge, an error for one
/// that holds something else.
pub fn read_label(dev: &mut dyn TapeDevice) -> Result<Option<Label>, TapeError> {
    dev.rewind()?;
    let first = dev.read()?;
    let Record::Data(bytes) = first else {
        return if first == Record::EndOfData {
            Ok(None)
        } else {
            Err(TapeError::Corrupt {
                barcode: dev.barcode().into(),
                what: "starts with a filemark, not a label".into(),
            })
        };
    };
    let label: Label = serde_json::from_slice(&bytes).map_err(|_| TapeError::Corrupt {
        barcode: dev.barcode().into(),
        what: "holds data that is not a BAMS label (another program's tape?)".into(),
    })?;
    if label.format != FORMAT {
        return Err(TapeError::Corrupt {
            barcode: dev.barcode().into(),
            what: format!("label format {}", label.format),
        });
    }
    Ok(Some(label))
}

/// Label the cartridge in `dev` for `pool`. A cartridge already labeled (or holding foreign
/// data) is refused unless `force`, because labeling erases it.
pub fn label(dev: &mut dyn TapeDevice, pool: &str, force: bool) -> Result<Label, TapeError> {
    crate::tape::vtl::validate_barcode(dev.barcode())?;
    validate_pool(pool).map_err(ApplianceError::Invalid)?;
    if !force {
        match read_label(dev) {
            Ok(None) => {}
            Ok(Some(l)) => {
                return Err(ApplianceError::Conflict(format!(
                    "{} is already labeled for pool {} (volume {}); relabeling erases it: use force",
                    l.barcode, l.pool, l.volume_id
                ))
                .into())
            }
            Err(TapeError::Corrupt { what, .. }) => {
                return Err(ApplianceError::Conflict(format!(
                    "{} {what}; labeling erases it: use force",
                    dev.barcode()
                ))
                .into())
            }
            Err(e) => return Err(e),
        }
    }
    let label = Label {
        format: FORMAT.into(),
        barcode: dev.barcode().into(),
        volume_id: {
            use rand::Rng;
            format!("{:032x}", rand::thread_rng().gen::<u128>())
        },
        pool: pool.into(),
        labeled_at: chrono::Utc::now().to_rfc3339(),
    };
    dev.rewind()?;
    let json = serde_json::to_vec(&label).map_err(|e| ApplianceError::Invalid(e.to_string()))?;
    dev.write(&json)?;
    dev.write_filemark()?;
    Ok(label)
}
