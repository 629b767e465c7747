'use strict';
'require view';
'require form';
'require fs';
'require poll';
'require tools.widgets as widgets';

/*
 * Services > VPN Passthrough: /etc/config/passthrough (section 'global') and the VPN flows the
 * daemon tracks. Save & Apply commits the config; procd's reload trigger then makes the running
 * daemon re-read it within a second (a refused value is logged, the last good config stays).
 */

var STATUS_CMD = '/usr/bin/passthrough';
var STATUS_ARGS = [ 'status', '--json' ];

/* Fields of `passthrough status --json` (one JSON object per flow per line) shown in the table. */
var STATUS_FIELDS = [ 'kind', 'lan_ip', 'lan_port', 'wan_port', 'remote_ip', 'remote_port',
	'key', 'state', 'age', 'packets' ];

var KIND_NAMES = { ike: 'IKE', esp: 'ESP', natt: 'ESP-in-UDP', l2tp: 'L2TP' };

return view.extend({
	/* One flow object per JSON line; lines that are not JSON objects are skipped. */
	parseStatus: function(text) {
		var flows = [];

		String(text || '').split(/\n/).forEach(function(line) {
			var f;

			line = line.trim();
			if (line.charAt(0) != '{')
				return;

			try { f = JSON.parse(line); }
			catch (e) { return; }

			if (f && typeof(f) == 'object')
				flows.push(f);
		});

		return flows;
	},

	formatCell: function(field, value) {
		if (value == null || value === '')
			return '-';

		switch (field) {
		case 'kind':
			return KIND_NAMES[value] || String(value);

		case 'age':
			return '%ds'.format(Math.round(+value));

		default:
			return String(value);
		}
	},

	flowRows: function(flows) {
		var self = this;

		return flows.map(function(f) {
			return STATUS_FIELDS.map(function(field) {
				return self.formatCell(field, f[field]);
			});
		});
	},

	updateFlows: function(table) {
		var self = this;

		return fs.exec_direct(STATUS_CMD, STATUS_ARGS, 'text').then(function(out) {
			var flows = self.parseStatus(out);

			if (flows.length || String(out || '').trim() != '')
				return flows;

			/* no output: either no flows or no daemon; fs.exec tells which (same ACL) */
			return fs.exec(STATUS_CMD, STATUS_ARGS).then(function(res) {
				if (res && res.code != 0)
					throw new Error((res.stderr || '').trim() || _('passthrough is not running'));

				return self.parseStatus(res ? res.stdout : '');
			});
		}).then(function(flows) {
			cbi_update_table(table, self.flowRows(flows),
				E('em', _('No VPN flows are being tracked right now.')));
		}).catch(function(err) {
			cbi_update_table(table, [],
				E('em', _('Flow status unavailable: %s').format(err.message || err)));
		});
	},

	render: function() {
		var m, s, o, self = this;

		m = new form.Map('passthrough', _('VPN Passthrough'),
			_('Lets VPN clients on the LAN (IPsec with IKEv1/IKEv2, raw ESP or NAT-T, L2TP, PPTP) reach ' +
			  'servers on the Internet through this router. Several LAN hosts may use the same server at ' +
			  'the same time; each keeps its ports 500/4500/1701. A family switched off is dropped by the ' +
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
		o.default = 'br-lan';
		o.rmempty = false;

		o = s.taboption('general', widgets.DeviceSelect, 'wan_device', _('WAN device'),
			_('The Internet side: the layer-3 device of the WAN (e.g. pppoe-wan for PPPoE).'));
		o.noaliases = true;
		o.default = 'wan';
		o.rmempty = false;

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
			_('How control packets reach the daemon: the nft queue statement or iptables NFQUEUE. A change needs a service restart.'));
		o.value('auto', _('Automatic'));
		o.value('nft', 'nft queue');
		o.value('iptables', 'iptables NFQUEUE');
		o.default = 'auto';

		o = s.taboption('advanced', form.ListValue, 'offload', _('Data offload'),
			_('Carry learned VPN data flows in a tc BPF program past the firewall (Ethernet LAN/WAN devices only); Automatic falls back to the firewall path when it cannot load.'));
		o.value('auto', _('Automatic'));
		o.value('bpf', _('BPF (required)'));
		o.value('off', _('Off'));
		o.default = 'auto';

		o = s.taboption('advanced', form.Value, 'queue_num', _('NFQUEUE number'),
			_('A change needs a service restart.'));
		o.datatype = 'range(0,65535)';
		o.placeholder = '7100';

		return m.render().then(function(mapEl) {
			var table = E('table', { 'class': 'table', 'id': 'passthrough_flows' }, [
				E('tr', { 'class': 'tr table-titles' }, [
					E('th', { 'class': 'th' }, _('Type')),
					E('th', { 'class': 'th' }, _('LAN host')),
					E('th', { 'class': 'th' }, _('LAN port')),
					E('th', { 'class': 'th' }, _('WAN port')),
					E('th', { 'class': 'th' }, _('Server')),
					E('th', { 'class': 'th' }, _('Server port')),
					E('th', { 'class': 'th' }, _('Key (SPI / tunnel)')),
					E('th', { 'class': 'th' }, _('State')),
					E('th', { 'class': 'th' }, _('Age')),
					E('th', { 'class': 'th' }, _('Packets'))
				])
			]);

			cbi_update_table(table, [], E('em', _('Collecting data...')));

			poll.add(function() {
				return self.updateFlows(table);
			}, 5);

			return E([], [
				mapEl,
				E('div', { 'class': 'cbi-section' }, [
					E('h3', _('Active VPN flows')),
					table
				])
			]);
		});
	}
});
