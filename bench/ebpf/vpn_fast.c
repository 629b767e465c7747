// bench/ebpf_probe.py: data of known VPN flows forwarded in tc ingress, skipping netfilter and the
// IP stack: the flow is looked up by (ingress port, packet source, protocol, demux id), one
// address (source going out, destination coming in), the TTL and the checksums are rewritten, and
// the packet is redirected to the other port. A probe of what an eBPF fast path could gain here;
// not (yet) a part of passthrough. Control packets and unknown flows go on to the stack.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct key {
	__u32 ifindex;  // ingress port
	__u32 saddr;    // packet source: the LAN host going out, the remote coming in
	__u32 id;       // ESP SPI (raw or after the UDP header), or L2TP tunnel id (packet bytes)
	__u32 proto;    // IPPROTO_ESP, or the UDP port: 4500 (NAT-T), 1701 (L2TP)
};
struct out {
	__u32 addr;     // new source (outbound) or destination (inbound) address
	__u32 ifindex;  // egress port
	__u8 smac[6];
	__u8 dmac[6];
	__u32 inbound;  // rewrite the destination instead of the source
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, struct out);
} flows SEC(".maps");

#define IP_OFF ETH_HLEN
#define L4_OFF (ETH_HLEN + 20)

SEC("tc")
int vpn_fast(struct __sk_buff *skb)
{
	// Frames built in page fragments (AF_PACKET senders, GRO) keep part of the headers out of the
	// linear area that direct access sees: pull them in first, as the IP stack does.
	if (bpf_skb_pull_data(skb, L4_OFF + 12))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + IP_OFF;
	__u8 *l4 = data + L4_OFF;
	if ((void *)(l4 + 12) > end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->ttl <= 1 || (ip->frag_off & bpf_htons(0x3fff)))
		return TC_ACT_OK;
	struct key k = { skb->ingress_ifindex, ip->saddr, 0, 0 };
	int udp = ip->protocol == IPPROTO_UDP;
	if (ip->protocol == IPPROTO_ESP) {
		k.proto = IPPROTO_ESP;
		k.id = *(__u32 *)l4;
	} else if (udp && ((struct udphdr *)l4)->dest == bpf_htons(4500)) {
		k.proto = 4500;
		k.id = *(__u32 *)(l4 + 8);  // zero: the non-ESP marker of IKE, never a key
		if (k.id == 0)
			return TC_ACT_OK;
	} else if (udp && ((struct udphdr *)l4)->dest == bpf_htons(1701)) {
		k.proto = 1701;
		if (l4[8] & 0xc0)           // T (control) or L bit: left to the stack
			return TC_ACT_OK;
		k.id = *(__u16 *)(l4 + 10);
	} else {
		return TC_ACT_OK;
	}
	struct out *o = bpf_map_lookup_elem(&flows, &k);
	if (!o)
		return TC_ACT_OK;
	__u32 aoff = o->inbound ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr);
	__u32 old = o->inbound ? ip->daddr : ip->saddr, new = o->addr;
	__u16 oldttl = *(__u16 *)&ip->ttl;
	ip->ttl--;
	__u16 newttl = *(__u16 *)&ip->ttl;
	__u16 ucheck = udp ? ((struct udphdr *)l4)->check : 0;
	bpf_l3_csum_replace(skb, IP_OFF + offsetof(struct iphdr, check), oldttl, newttl, 2);
	bpf_l3_csum_replace(skb, IP_OFF + offsetof(struct iphdr, check), old, new, 4);
	if (ucheck)
		bpf_l4_csum_replace(skb, L4_OFF + offsetof(struct udphdr, check), old, new, BPF_F_PSEUDO_HDR | 4);
	bpf_skb_store_bytes(skb, IP_OFF + aoff, &new, 4, 0);
	bpf_skb_store_bytes(skb, 0, o->dmac, 6, 0);
	bpf_skb_store_bytes(skb, 6, o->smac, 6, 0);
	return bpf_redirect(o->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
