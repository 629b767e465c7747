// bench/ebpf_probe.py: known NAT-T data LAN->WAN rewritten (source address, TTL, checksums) and
// redirected to the WAN port in tc ingress, skipping netfilter and the IP stack. A probe of what
// an eBPF fast path could gain here; not (yet) a part of passthrough.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct key { __u32 saddr; __u32 spi; };
struct out { __u32 new_saddr; __u32 ifindex; __u8 smac[6]; __u8 dmac[6]; };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, struct out);
} flows SEC(".maps");

#define IP_OFF ETH_HLEN
#define UDP_OFF (ETH_HLEN + 20)

SEC("tc")
int natt_up(struct __sk_buff *skb)
{
	// Packets built in page fragments (AF_PACKET senders, GRO) hold only part of the headers in
	// the linear area that direct access sees: pull the headers in first, as the IP stack does.
	if (bpf_skb_pull_data(skb, UDP_OFF + 12))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	struct udphdr *udp = data + UDP_OFF;
	__u32 *marker = data + UDP_OFF + 8;
	if ((void *)(marker + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	if (udp->dest != bpf_htons(4500) || *marker == 0 || ip->ttl <= 1)
		return TC_ACT_OK;
	struct key k = { ip->saddr, *marker };
	struct out *o = bpf_map_lookup_elem(&flows, &k);
	if (!o)
		return TC_ACT_OK;
	__u32 old = ip->saddr, new = o->new_saddr;
	__u16 oldttl = *(__u16 *)&ip->ttl;
	ip->ttl--;
	__u16 newttl = *(__u16 *)&ip->ttl;
	__u16 ucheck = udp->check;
	bpf_l3_csum_replace(skb, IP_OFF + offsetof(struct iphdr, check), oldttl, newttl, 2);
	bpf_l3_csum_replace(skb, IP_OFF + offsetof(struct iphdr, check), old, new, 4);
	if (ucheck)
		bpf_l4_csum_replace(skb, UDP_OFF + offsetof(struct udphdr, check), old, new, BPF_F_PSEUDO_HDR | 4);
	bpf_skb_store_bytes(skb, IP_OFF + offsetof(struct iphdr, saddr), &new, 4, 0);
	bpf_skb_store_bytes(skb, 0, o->dmac, 6, 0);
	bpf_skb_store_bytes(skb, 6, o->smac, 6, 0);
	return bpf_redirect(o->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
