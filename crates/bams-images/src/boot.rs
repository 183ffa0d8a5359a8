//! What a network-booting machine is told: wait to be accepted, boot its local disk, or boot
//! the management OS with a one-time token. The same answer is rendered as an iPXE script
//! (`GET /boot/{mac}.ipxe`) and in pixiecore's API-mode JSON (`GET /v1/boot/{mac}`).

use serde::Serialize;

/// The decision for one network boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAnswer {
    /// Unknown or not yet accepted: show a message and ask again later.
    Wait,
    /// Nothing queued: leave the network boot and boot the local disk.
    LocalDisk,
    /// Boot the management OS, which runs `bams flash --server` with this boot's token.
    Manage {
        /// The one-time token (only ever shown in this answer).
        token: String,
    },
}

/// Kernel, initramfs and command line of the management OS, as URLs a boot ROM can fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PixiecoreAnswer {
    /// Kernel URL.
    pub kernel: String,
    /// Initramfs URLs.
    pub initrd: Vec<String>,
    /// Kernel command line.
    pub cmdline: String,
    /// Shown on the console while booting.
    pub message: String,
}

/// How boot answers are addressed.
#[derive(Debug, Clone)]
pub struct BootSite<'a> {
    /// The server as the machine reaches it (`http://10.0.2.2:4848`), no trailing slash.
    pub base_url: &'a str,
    /// Extra kernel arguments (console, …).
    pub cmdline: &'a str,
}

impl BootSite<'_> {
    fn cmdline(&self, mac: &str, token: &str) -> String {
        let mut line = format!("bams.server={} bams.token={token} bams.mac={mac}", self.base_url);
        if !self.cmdline.is_empty() {
            line.push(' ');
            line.push_str(self.cmdline);
        }
        line
    }

    /// The answer in pixiecore's shape (`None` = do not network-boot this machine now).
    pub fn pixiecore(&self, answer: &BootAnswer, mac: &str) -> Option<PixiecoreAnswer> {
        match answer {
            BootAnswer::Manage { token } => Some(PixiecoreAnswer {
                kernel: format!("{}/boot/files/vmlinuz", self.base_url),
                initrd: vec![format!("{}/boot/files/initrd.img", self.base_url)],
                cmdline: self.cmdline(mac, token),
                message: format!("BAMS: {mac} boots the management OS"),
            }),
            BootAnswer::Wait | BootAnswer::LocalDisk => None,
        }
    }

    /// The answer as an iPXE script.
    pub fn ipxe(&self, answer: &BootAnswer, mac: &str) -> String {
        let base = self.base_url;
        match answer {
            BootAnswer::Wait => format!(
                "#!ipxe\n\
                 echo BAMS: machine {mac} is registered and waits for an administrator to accept it.\n\
                 echo Asking again in 30 seconds.\n\
                 :retry\n\
                 sleep 30\n\
                 chain --replace {base}/boot/{mac}.ipxe || goto retry\n"
            ),
            BootAnswer::LocalDisk => format!(
                "#!ipxe\n\
                 echo BAMS: nothing is queued for {mac}; booting the local disk.\n\
                 exit\n"
            ),
            BootAnswer::Manage { token } => format!(
                "#!ipxe\n\
                 echo BAMS: {mac} boots the management OS to flash its disks.\n\
                 kernel {base}/boot/files/vmlinuz {cmdline}\n\
                 initrd {base}/boot/files/initrd.img\n\
                 boot\n",
                cmdline = self.cmdline(mac, token)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_render_for_ipxe_and_pixiecore() {
        let site = BootSite { base_url: "http://10.0.2.2:4848", cmdline: "console=ttyS0" };
        let mac = "52:54:00:12:34:56";
        let manage = BootAnswer::Manage { token: "t0k".into() };
        let script = site.ipxe(&manage, mac);
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains(
            "kernel http://10.0.2.2:4848/boot/files/vmlinuz bams.server=http://10.0.2.2:4848 bams.token=t0k bams.mac=52:54:00:12:34:56 console=ttyS0\n"
        ));
        assert!(script.contains("initrd http://10.0.2.2:4848/boot/files/initrd.img\n"));
        let p = site.pixiecore(&manage, mac).expect("manage boots");
        assert_eq!(p.initrd, vec!["http://10.0.2.2:4848/boot/files/initrd.img".to_string()]);
        assert!(p.cmdline.contains("bams.token=t0k"));
        assert!(site.ipxe(&BootAnswer::LocalDisk, mac).contains("\nexit\n"));
        assert!(site
            .ipxe(&BootAnswer::Wait, mac)
            .contains("chain --replace http://10.0.2.2:4848/boot/52:54:00:12:34:56.ipxe"));
        assert_eq!(site.pixiecore(&BootAnswer::Wait, mac), None);
    }
}
