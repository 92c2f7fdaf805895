//! What kind of network an address belongs to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of network an address belongs to, for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Globally routable unicast.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (shared address space), fc00::/7.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// Cloud instance metadata endpoints (169.254.169.254, 169.254.170.2, fd00:ec2::254,
    /// 100.100.100.200), whatever range they sit in.
    Metadata,
    /// Everything that is no host to fetch from: unspecified, "this network", broadcast,
    /// multicast, documentation, benchmarking, reserved and IETF protocol ranges, and
    /// translation prefixes that embed a non-public IPv4 address.
    Reserved,
}

impl AddressClass {
    /// Words for error messages: "a loopback address", ...
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Metadata => "a cloud metadata endpoint",
            AddressClass::Reserved => "a special-purpose address",
        }
    }
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Classifies an address (IPv4-mapped IPv6 addresses as the IPv4 address they carry).
pub fn classify(addr: IpAddr) -> AddressClass {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(addr: Ipv4Addr) -> AddressClass {
    match addr.octets() {
        [169, 254, 169, 254] | [169, 254, 170, 2] | [100, 100, 100, 200] => AddressClass::Metadata,
        [127, ..] => AddressClass::Loopback,
        [10, ..] | [192, 168, ..] => AddressClass::Private,
        [172, second, ..] if (16..=31).contains(&second) => AddressClass::Private,
        [100, second, ..] if (64..=127).contains(&second) => AddressClass::Private,
        [169, 254, ..] => AddressClass::LinkLocal,
        // 0/8 "this network" (incl. 0.0.0.0), IETF protocol assignments, documentation,
        // benchmarking, the old 6to4 relay anycast, and multicast + 240/4 + broadcast.
        [0, ..]
        | [192, 0, 0, _]
        | [192, 0, 2, _]
        | [198, 51, 100, _]
        | [203, 0, 113, _]
        | [198, 18 | 19, ..]
        | [192, 88, 99, _] => AddressClass::Reserved,
        [first, ..] if first >= 224 => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// A prefix that embeds an IPv4 address is only as public as that address.
fn embedded_v4(v4: Ipv4Addr) -> AddressClass {
    match classify_v4(v4) {
        AddressClass::Public => AddressClass::Public,
        _ => AddressClass::Reserved,
    }
}

fn classify_v6(addr: Ipv6Addr) -> AddressClass {
    if addr.is_unspecified() {
        return AddressClass::Reserved;
    }
    if addr.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some(v4) = addr.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = addr.segments();
    let o = addr.octets();
    match s {
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] => AddressClass::Metadata,
        [first, ..] if first & 0xfe00 == 0xfc00 => AddressClass::Private,
        [first, ..] if first & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        // NAT64 well-known prefix 64:ff9b::/96.
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => embedded_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15])),
        // 6to4 2002::/16 carries the IPv4 address in bits 16..48.
        [0x2002, ..] => embedded_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        // 2001::/23 (Teredo, benchmarking, ORCHID, ...), 2001:db8::/32 and 3fff::/20
        // documentation.
        [0x2001, second, ..] if second < 0x0200 || second == 0x0db8 => AddressClass::Reserved,
        [0x3fff, second, ..] if second < 0x1000 => AddressClass::Reserved,
        [first, ..] if first & 0xe000 == 0x2000 => AddressClass::Public,
        // Outside global unicast 2000::/3: multicast, site-local, IPv4-compatible, discard, ...
        _ => AddressClass::Reserved,
    }
}
