'use strict';
'require view';
'require form';
'require rpc';
'require poll';
'require tools.widgets as widgets';

/*
 * Services > VPN Passthrough: /etc/config/passthrough (section 'global') and the VPN flows the
 * daemon tracks. Save & Apply commits the config; procd's reload trigger then makes the running
 * daemon re-read it within a second (a refused value is logged, the last good config stays).
 *
 * Live state comes over ubus from luci-app-passthrough's rpcd ucode plugin (`luci.passthrough`,
 * /usr/share/rpcd/ucode/luci.passthrough), which asks the daemon's control socket. The plugin
 * answers { error: ... } when the daemon is not running; a refused call (ACL) rejects.
 */

var callGetStatus = rpc.declare({
	object: 'luci.passthrough',
	method: 'getStatus',
	expect: { }
});

/* Fields of the daemon's flow records (`status` command) the table shows, in column order. */
var FLOW_FIELDS = [ 'kind', 'lan_ip', 'lan_port', 'wan_port', 'remote_ip', 'remote_port',
	'key', 'state', 'zone', 'offloaded', 'packets' ];

var KIND_NAMES = { ike: 'IKE', esp: 'ESP', natt: 'ESP-in-UDP', l2tp: 'L2TP' };

function dash(v) {
	return (v == null || v === '') ? '-' : String(v);
}

return view.extend({
	load: function() {
		return this.fetchStatus();
	},

	/* The plugin's reply, or { error: ... } for a failed call: never rejects. */
	fetchStatus: function() {
		return callGetStatus().then(function(res) {
			if (!res || typeof(res) != 'object')
				return { error: _('No reply from luci.passthrough') };

			return res;
		}, function(err) {
			return { error: (err && err.message) ? err.message : String(err) };
		});
	},

	formatPorts: function(f) {
		if (f.lan_port == null && f.wan_port == null)
			return '-';

		if (f.wan_port == null || f.wan_port == f.lan_port)
			return dash(f.lan_port);

		return '%s \u2192 %s'.format(dash(f.lan_port), dash(f.wan_port));
	},

	formatRemote: function(f) {
		return f.remote_port != null ? '%s:%s'.format(dash(f.remote_ip), f.remote_port) : dash(f.remote_ip);
	},

	/* One table row per flow: Type, LAN host, Ports, Server, Key, State, Zone, Offloaded, Packets. */
	flowRows: function(flows) {
		var self = this;

		return (Array.isArray(flows) ? flows : []).filter(function(f) {
			return f && typeof(f) == 'object';
		}).map(function(f) {
			return [
				KIND_NAMES[f.kind] || dash(f.kind),
				dash(f.lan_ip),
				self.formatPorts(f),
				self.formatRemote(f),
				dash(f.key),
				dash(f.state),
				dash(f.zone),
				f.offloaded ? _('yes') : _('no'),
				dash(f.packets)
			];
		});
	},

	/* [label, value] pairs of the daemon summary. */
	summaryRows: function(s) {
		var onoff = function(v) { return v ? _('on') : _('off') };
		var hosts = (s.hosts && typeof(s.hosts) == 'object') ? Object.keys(s.hosts).length : 0;
		var off = s.offload || {};
		var natt = s.natt_ports || {};
		/* nft flowtables (fw4's software flow offloading) have no conntrack zones: see the daemon's log */
		var fts = Array.isArray(s.flowtables) ? s.flowtables.map(function(f) { return '%s %s %s'.format(f[0], f[1], f[2]) }) : [];

		return [
			[ _('Passthrough'), s.enabled ? _('enabled') : _('disabled') ],
			[ _('IPsec / L2TP / PPTP'), '%s / %s / %s'.format(onoff(s.ipsec_passthrough), onoff(s.l2tp_passthrough), onoff(s.pptp_passthrough)) ],
			[ _('Tracked flows'), '%d (%d pending)'.format(+s.flows || 0, +s.pending || 0) ],
			[ _('LAN hosts with a VPN'), String(hosts) ],
			[ _('Queue'), '%s, queue %s'.format(dash(s.backend), dash(s.queue_num)) ],
			[ _('Data offload'), off.active ? _('active') : (off.note ? _('off (%s)').format(off.note) : _('off')) ],
			[ _('NAT-T ports'), natt.effective ? _('%s (setting: %s), %d distinct in use').format(natt.effective, dash(natt.configured), +natt.distinct_in_use || 0) : '-' ],
			[ _('Flowtables'), fts.length ? _('%s: bypasses the zones of LAN hosts sharing a server; switch software flow offloading off').format(fts.join(', ')) : _('none') ],
			[ _('Errors'), String((+s.errors || 0) + (+s.op_failures || 0)) ],
			[ _('Uptime'), '%ds'.format(Math.round(+s.uptime || 0)) ]
		];
	},

	renderSummary: function(node, status) {
		var rows;

		if (status.error) {
			rows = [ E('div', { 'class': 'alert-message warning', 'id': 'passthrough_error' },
				_('Flow status unavailable: %s').format(status.error)) ];
		}
		else {
			rows = this.summaryRows(status.summary || {}).map(function(r) {
				return E('tr', { 'class': 'tr' }, [
					E('td', { 'class': 'td left', 'width': '33%' }, r[0]),
					E('td', { 'class': 'td left' }, r[1])
				]);
			});
			rows = [ E('table', { 'class': 'table' }, rows) ];
		}

		while (node.firstChild)
			node.removeChild(node.firstChild);

		rows.forEach(function(r) { node.appendChild(r) });
	},

	updateStatus: function(summary, table, status) {
		this.renderSummary(summary, status);

		if (status.error)
			cbi_update_table(table, [], E('em', _('Flow status unavailable: %s').format(status.error)));
		else
			cbi_update_table(table, this.flowRows(status.flows),
				E('em', _('No VPN flows are being tracked right now.')));
	},

	render: function(status) {
		var m, s, o, self = this;

		m = new form.Map('passthrough', _('VPN Passthrough'),
			_('Lets VPN clients on the LAN (IPsec with IKEv1/IKEv2, raw ESP or NAT-T, L2TP, PPTP) reach ' +
			  'servers on the Internet through this router. Several LAN hosts may use the same server at ' +
			  'the same time; each keeps its ports 500 and 1701, and 4500 as NAT-T source ports says. A family switched off is dropped by the ' +
			  'firewall and its open connections are cut.'));

		s = m.section(form.NamedSection, 'global', 'passthrough');
		s.anonymous = true;
		s.addremove = false;

		s.tab('general', _('General Settings'));
		s.tab('advanced', _('Advanced Settings'));

		o = s.taboption('general', form.Flag, 'enabled', _('Enable'),
			_('When disabled, no passthrough rules are installed at all (plain router behaviour).'));
		o.default = '1';
		o.rmempty = false;

		o = s.taboption('general', form.Flag, 'ipsec_passthrough', _('IPsec passthrough'),
			_('Forward IKE (UDP 500/4500), ESP and AH. Off: dropped, and live IPsec tunnels are cut.'));
		o.default = '1';
		o.rmempty = false;

		o = s.taboption('general', form.Flag, 'l2tp_passthrough', _('L2TP passthrough'),
			_('Forward L2TP (UDP 1701, L2TPv3). Off: dropped, and live L2TP tunnels are cut.'));
		o.default = '1';
		o.rmempty = false;

		o = s.taboption('general', form.Flag, 'pptp_passthrough', _('PPTP passthrough'),
			_('Forward PPTP (TCP 1723 and GRE, with the kernel\'s PPTP helper). Off: dropped.'));
		o.default = '1';
		o.rmempty = false;

		o = s.taboption('general', widgets.DeviceSelect, 'lan_device', _('LAN device'),
			_('The device the VPN clients are on, usually the LAN bridge.'));
		o.noaliases = true;
		o.datatype = 'netdevname';
		o.default = 'br-lan';
		o.rmempty = false;

		o = s.taboption('general', widgets.DeviceSelect, 'wan_device', _('WAN device'),
			_('The Internet side: the layer-3 device of the WAN (e.g. pppoe-wan for PPPoE).'));
		o.noaliases = true;
		o.datatype = 'netdevname';
		o.default = 'wan';
		o.rmempty = false;

		o = s.taboption('general', form.ListValue, 'natt_ports', _('NAT-T source ports'),
			_('When several LAN hosts use NAT-T (UDP 4500) to the same server: Preserve keeps 4500 for all of them (the router tells them apart by SPI); Distinct keeps 4500 for the first and gives each later host a port of its own (14500-15523), for servers that key clients by address and port (libreswan, MikroTik, Windows RRAS). UDP 500 and L2TP keep their ports either way. Applies to new NAT-T connections.'));
		o.value('auto', _('Automatic (the recommended mode, shown in the status below)'));
		o.value('preserve', _('Preserve 4500 for every host'));
		o.value('distinct', _('Distinct port for each later host'));
		o.default = 'auto';

		o = s.taboption('general', form.ListValue, 'log_level', _('Log level'));
		o.value('debug', _('Debug'));
		o.value('info', _('Info'));
		o.value('notice', _('Notice'));
		o.value('warning', _('Warning'));
		o.value('err', _('Error'));
		o.default = 'info';

		o = s.taboption('advanced', form.Value, 'udp_timeout', _('VPN UDP timeout (s)'),
			_('Conntrack timeout of IKE, NAT-T and L2TP flows; at least 120 s, since L2TP sends its keepalive every 60 s.'));
		o.datatype = 'range(120,86400)';
		o.placeholder = '180';

		o = s.taboption('advanced', form.Value, 'flow_timeout', _('Idle flow expiry (s)'));
		o.datatype = 'range(30,86400)';
		o.placeholder = '600';

		o = s.taboption('advanced', form.Value, 'max_hosts', _('Maximum LAN hosts'),
			_('Each LAN host with a VPN gets a conntrack zone of its own.'));
		o.datatype = 'range(1,16384)';
		o.placeholder = '256';

		o = s.taboption('advanced', form.ListValue, 'queue_backend', _('Queue backend'),
			_('How control packets reach the daemon: the nft queue statement, or the xt NFQUEUE target on kernels without kmod-nft-queue. A change needs a service restart.'));
		o.value('auto', _('Automatic'));
		o.value('nft', 'nft queue');
		o.value('xt', 'xt NFQUEUE');
		o.default = 'auto';

		o = s.taboption('advanced', form.ListValue, 'offload', _('Data offload'),
			_('Carry learned VPN data flows in a tc BPF program past the firewall (an Ethernet LAN device; an Ethernet or PPPoE WAN device); Automatic falls back to the firewall path when it cannot load.'));
		o.value('auto', _('Automatic'));
		o.value('bpf', _('BPF (required)'));
		o.value('off', _('Off'));
		o.default = 'auto';

		o = s.taboption('advanced', form.Value, 'queue_num', _('NFQUEUE number'),
			_('A change needs a service restart.'));
		o.datatype = 'range(0,65535)';
		o.placeholder = '7100';

		return m.render().then(function(mapEl) {
			var summary = E('div', { 'id': 'passthrough_summary' });
			var table = E('table', { 'class': 'table', 'id': 'passthrough_flows' }, [
				E('tr', { 'class': 'tr table-titles' }, [
					E('th', { 'class': 'th' }, _('Type')),
					E('th', { 'class': 'th' }, _('LAN host')),
					E('th', { 'class': 'th' }, _('Ports (LAN \u2192 WAN)')),
					E('th', { 'class': 'th' }, _('Server')),
					E('th', { 'class': 'th' }, _('Key (SPI / tunnel)')),
					E('th', { 'class': 'th' }, _('State')),
					E('th', { 'class': 'th' }, _('Zone')),
					E('th', { 'class': 'th' }, _('Offloaded')),
					E('th', { 'class': 'th' }, _('Packets'))
				])
			]);

			self.updateStatus(summary, table, status || { error: _('Collecting data...') });

			poll.add(function() {
				return self.fetchStatus().then(function(st) {
					self.updateStatus(summary, table, st);
				});
			}, 5);

			return E([], [
				mapEl,
				E('div', { 'class': 'cbi-section', 'id': 'passthrough_status' }, [
					E('h3', _('Daemon status')),
					summary,
					E('h3', _('Active VPN flows')),
					table
				])
			]);
		});
	}
});
