// SPDX-License-Identifier: GPL-2.0
// passthrough's BPF offload: data packets of VPN flows the daemon has learned and conntrack has
// accepted are forwarded from tc ingress of one router port straight to the other, past
// netfilter and the IP stack (this kernel has no nft flowtable; the three prerouting hooks
// cost 10-17 % of kernel-only forwarding, bench/README.md).
//
// The same program on both ports. The key is (ingress port, addresses, ports, protocol, ESP SPI
// or L2TP tunnel id): inbound the 5-tuple alone cannot tell apart two LAN hosts that share a
// server, and outbound the id keeps a new SA (rekey) or tunnel off the fast path until the
// daemon has seen it (else it could never pair the answering SA). The entry says which address
// and port to rewrite (the NAT conntrack chose) and which port the route must lead to.
// Anything unusual goes on to the stack unchanged: IKE (UDP 500, 4500 with the non-ESP marker),
// NAT-T keepalives, L2TP control (T bit), IP options, fragments, TTL <= 1, no route or
// neighbour, a route to another port, packets over the MTU, and families the policy map says
// are off (the stack's policy rules then drop them). "Goes on" is TC_ACT_UNSPEC, so filters of
// other tools behind ours on the same hook still run.
//
// PPPoE WAN (the most common home WAN): the WAN port is the ppp device, where packets have no
// MAC header. `offload_l3` runs there (IP at offset 0) and gives inbound packets the Ethernet
// header the LAN port needs; outbound, the kernel's redirect to a PPP device drops our Ethernet
// header itself (PPP counts as L3 for it: include/linux/if_arp.h dev_is_mac_header_xmit) and
// the PPPoE driver adds the session header.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
// L2: the link header in front of IP (ETH_HLEN on Ethernet ports, 0 on PPP)
#define IP_OFF(L2) (L2)
#define L4_OFF(L2) ((L2) + sizeof(struct iphdr))
// UDP header + L2TP header up to a tunnel id behind the length field (RFC 2661 3.1)
#define PULL_LEN(L2) (L4_OFF(L2) + sizeof(struct udphdr) + 6)

#define PORT_IKE 500
#define PORT_NATT 4500
#define PORT_L2TP 1701
#define L2TP_T 0x80     // control message
#define L2TP_L 0x40     // length field present
#define L2TP_VER_MASK 0x0f

// offload_val.family bits, and the policy map's value: families whose passthrough is on
#define FAMILY_IPSEC 1
#define FAMILY_L2TP 2

// stats (per CPU): why packets were or were not carried
enum { ST_CARRIED, ST_MISS, ST_POLICY, ST_FIB, ST_OTHER_PORT, ST_MAX };

struct offload_key {
	__u32 ifindex;   // ingress port (host order)
	__be32 saddr;
	__be32 daddr;
	__be32 id;       // ESP SPI, or L2TP tunnel id in the first two bytes
	__be16 sport;    // 0 for ESP
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct offload_val {
	__be32 addr;     // new source (outbound) or destination (inbound) address
	__be16 port;     // new source / destination port; 0 for ESP
	__u8 inbound;    // 1: rewrite the destination, 0: the source
	__u8 family;     // FAMILY_*
	__u32 oif;       // the port the route must lead to
	__u8 oif_l3;     // 1: that port has no MAC header (PPP)
	__u8 pad[3];
	__u64 packets;   // carried: the daemon's activity signal (idle flows, conntrack refresh)
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);  // memory per learned flow, not 16384 entries up front
	__type(key, struct offload_key);
	__type(value, struct offload_val);
} offload_flows SEC(".maps");

// [0]: FAMILY_* bits of the families whose passthrough is on; [1]: the mark bit for packets
// that may be VPN and go on to the stack (0: none)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} offload_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} offload_stats SEC(".maps");

static __always_inline int count(__u32 what, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&offload_stats, &what);
	if (n)
		*n += 1;
	return verdict;
}

// The stack's prerouting hooks (nat/nftables.py classify) need to look only at packets marked
// here, when the daemon sets a mark bit (policy map index 1): everything that may be VPN and is
// not carried. The rest (TCP, ICMP, other UDP) leaves their first rule at once.
static __always_inline int to_stack(struct __sk_buff *skb, int maybe_vpn)
{
	if (maybe_vpn) {
		__u32 one = 1;
		__u32 *bit = bpf_map_lookup_elem(&offload_policy, &one);
		if (bit && *bit)
			skb->mark |= *bit;
	}
	return TC_ACT_UNSPEC;
}

static __always_inline int carry(struct __sk_buff *skb, const __u32 l2)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (data + PULL_LEN(l2) > end) {
		// Headers partly in page fragments (AF_PACKET senders, GRO): pull them into the
		// linear area direct access sees, as the IP stack does (all of a shorter packet).
		if (bpf_skb_pull_data(skb, skb->len < PULL_LEN(l2) ? skb->len : PULL_LEN(l2)))
			return to_stack(skb, 1);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	if (l2) {
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
			return to_stack(skb, 0);  // not IPv4: the ip family hooks never see it
	} else if (skb->protocol != bpf_htons(ETH_P_IP)) {
		return to_stack(skb, 0);
	}
	if (data + L4_OFF(l2) + 4 > end)  // up to the UDP ports or an ESP SPI
		return to_stack(skb, 1);
	struct iphdr *ip = data + IP_OFF(l2);
	__u8 *l4 = data + L4_OFF(l2);
	struct udphdr *udp = (struct udphdr *)l4;
	__u8 *payload = l4 + sizeof(struct udphdr);

	// Options and fragments: the stack reassembles (before prerouting) and decides.
	if (ip->ihl != 5 || ip->ttl <= 1 || (ip->frag_off & bpf_htons(0x3fff)))
		return to_stack(skb, 1);

	struct offload_key k = {};
	k.ifindex = skb->ingress_ifindex;
	k.saddr = ip->saddr;
	k.daddr = ip->daddr;
	k.proto = ip->protocol;
	if (ip->protocol == IPPROTO_ESP) {
		k.id = *(__be32 *)l4;
	} else if (ip->protocol == IPPROTO_UDP) {
		k.sport = udp->source;
		k.dport = udp->dest;
		int natt = udp->source == bpf_htons(PORT_NATT) || udp->dest == bpf_htons(PORT_NATT);
		int l2tp = udp->source == bpf_htons(PORT_L2TP) || udp->dest == bpf_htons(PORT_L2TP);
		if (!natt && !l2tp)
			return to_stack(skb, udp->source == bpf_htons(PORT_IKE) || udp->dest == bpf_htons(PORT_IKE));
		if ((void *)(payload + 4) > end)
			return to_stack(skb, 1);
		if (natt) {
			__be32 spi = *(__be32 *)payload;
			if (spi == 0 || bpf_ntohs(udp->len) <= sizeof(struct udphdr) + 8)
				return to_stack(skb, 1);  // IKE behind the non-ESP marker, keepalive, runt
			k.id = spi;
		} else {
			if ((payload[0] & L2TP_T) || (payload[1] & L2TP_VER_MASK) != 2)
				return to_stack(skb, 1);  // control messages and L2TPv3 are the daemon's
			if (payload[0] & L2TP_L) {
				if ((void *)(payload + 6) > end)
					return to_stack(skb, 1);
				k.id = *(__be16 *)(payload + 4);
			} else {
				k.id = *(__be16 *)(payload + 2);
			}
		}
	} else {
		return to_stack(skb, 0);
	}

	struct offload_val *v = bpf_map_lookup_elem(&offload_flows, &k);
	if (!v)
		return count(ST_MISS, to_stack(skb, 1));
	__u32 zero = 0;
	__u32 *allowed = bpf_map_lookup_elem(&offload_policy, &zero);
	if (!allowed || !(*allowed & v->family))
		return count(ST_POLICY, to_stack(skb, 1));

	// Route the translated packet: egress port, MACs, forwarding on, MTU.
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ifindex = skb->ingress_ifindex;
	fib.ipv4_src = v->inbound ? ip->saddr : v->addr;
	fib.ipv4_dst = v->inbound ? v->addr : ip->daddr;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return count(ST_FIB, to_stack(skb, 1));
	if (fib.ifindex != v->oif || (!l2 && v->oif_l3))
		return count(ST_OTHER_PORT, to_stack(skb, 1));

	__be32 old_addr = v->inbound ? ip->daddr : ip->saddr, new_addr = v->addr;
	__be16 old_port = v->inbound ? udp->dest : udp->source, new_port = v->port;
	int is_udp = ip->protocol == IPPROTO_UDP;
	__u16 old_ttl = *(__u16 *)&ip->ttl;
	__u16 new_ttl = old_ttl;
	((__u8 *)&new_ttl)[0] -= 1;
	__u32 at = l2;  // where IP starts from here on
	if (!l2) {
		// From PPP to an Ethernet port: room for its header (zeroed), made before anything
		// is rewritten so a failure leaves the packet as it came. Pointers are stale after it.
		if (bpf_skb_change_head(skb, ETH_HLEN, 0))
			return count(ST_FIB, to_stack(skb, 1));
		__be16 proto = bpf_htons(ETH_P_IP);
		bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2, 0);
		at = ETH_HLEN;
	}
	__u32 addr_off = IP_OFF(at) + (v->inbound ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
	__u32 port_off = L4_OFF(at) + (v->inbound ? offsetof(struct udphdr, dest) : offsetof(struct udphdr, source));
	__u32 check = IP_OFF(at) + offsetof(struct iphdr, check);
	__u32 ucheck = L4_OFF(at) + offsetof(struct udphdr, check);

	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, skb->len);

	bpf_l3_csum_replace(skb, check, old_ttl, new_ttl, 2);
	bpf_skb_store_bytes(skb, IP_OFF(at) + offsetof(struct iphdr, ttl), &new_ttl, 2, 0);
	if (old_addr != new_addr) {
		bpf_l3_csum_replace(skb, check, old_addr, new_addr, 4);
		if (is_udp)  // a zero UDP checksum (common with NAT-T) stays zero
			bpf_l4_csum_replace(skb, ucheck, old_addr, new_addr, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4);
		bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0);
	}
	if (is_udp && new_port && old_port != new_port) {
		bpf_l4_csum_replace(skb, ucheck, old_port, new_port, BPF_F_MARK_MANGLED_0 | 2);
		bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0);
	}
	if (!v->oif_l3) {  // to PPP the kernel takes the Ethernet header off (and PPPoE adds its own)
		bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), fib.dmac, ETH_ALEN, 0);
		bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), fib.smac, ETH_ALEN, 0);
	}
	count(ST_CARRIED, 0);
	return bpf_redirect(fib.ifindex, 0);
}

SEC("tc")
int offload(struct __sk_buff *skb)  // Ethernet ports
{
	return carry(skb, ETH_HLEN);
}

SEC("tc")
int offload_l3(struct __sk_buff *skb)  // ports without a MAC header: a PPP (PPPoE) WAN
{
	return carry(skb, 0);
}

char LICENSE[] SEC("license") = "GPL";
