// Bench only, on the senders' egress (never on the router): makes a frame's first bytes
// linear, as the receive path of a router's Ethernet driver leaves them. trafgen's TX ring
// hands the stack only the MAC header linear and the rest in page fragments, so every nft
// payload match on the router would copy the header out (the slow path) where a real NIC's
// packet is read in place (bench/README.md, "linear headers").
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define LINEAR 128

SEC("tc")
int linear(struct __sk_buff *skb)
{
	bpf_skb_pull_data(skb, skb->len < LINEAR ? skb->len : LINEAR);
	return -1;  // TC_ACT_UNSPEC: on as usual
}

char LICENSE[] SEC("license") = "GPL";
