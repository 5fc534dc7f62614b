package registry

import "testing"

func TestValidateVMPortForwards(t *testing.T) {
	vmtRunCases(t, "VirtualMachine", vmtVMBase, []vmtCase{
		{name: "valid", patch: `{"spec":{"networks":[{"type":"Main","portForwards":[{"hostPort":2201,"port":22},{"protocol":"UDP","hostPort":2201,"port":53}]}]}}`},
		{name: "bad protocol", patch: `{"spec":{"networks":[{"type":"Main","portForwards":[{"protocol":"SCTP","hostPort":1,"port":1}]}]}}`,
			want: []string{"spec.networks[0].portForwards[0].protocol FieldValueNotSupported"}},
		{name: "ports out of range", patch: `{"spec":{"networks":[{"type":"Main","portForwards":[{"hostPort":0,"port":70000}]}]}}`,
			want: []string{"spec.networks[0].portForwards[0].hostPort FieldValueInvalid", "spec.networks[0].portForwards[0].port FieldValueInvalid"}},
		{name: "host port twice", patch: `{"spec":{"networks":[{"type":"Main","portForwards":[{"hostPort":80,"port":80}]},{"type":"ClusterNetwork","name":"n","portForwards":[{"protocol":"TCP","hostPort":80,"port":8080}]}]}}`,
			want: []string{"spec.networks[1].portForwards[0].hostPort FieldValueDuplicate"}, msg: "already forwarded by spec.networks[0].portForwards[0]"},
		{name: "project network", patch: `{"spec":{"networks":[{"type":"Network","name":"n","portForwards":[{"hostPort":80,"port":80}]}]}}`,
			want: []string{"spec.networks[0].portForwards FieldValueForbidden"}},
	})
}

func TestValidateVMInbound(t *testing.T) {
	vmtRunCases(t, "VirtualMachine", vmtVMBase, []vmtCase{
		{name: "valid", patch: `{"spec":{"networks":[{"type":"Main","inbound":{"rules":[{"port":22},{"protocol":"UDP","port":5000,"endPort":5100,"from":["10.0.0.0/8","192.0.2.7"]},{"protocol":"ICMP"}]}}]}}`},
		{name: "deny all", patch: `{"spec":{"networks":[{"type":"Main","inbound":{}}]}}`},
		{name: "bad protocol", patch: `{"spec":{"networks":[{"type":"Main","inbound":{"rules":[{"protocol":"SCTP","port":1}]}}]}}`,
			want: []string{"spec.networks[0].inbound.rules[0].protocol FieldValueNotSupported"}},
		{name: "missing port and bad range", patch: `{"spec":{"networks":[{"type":"Main","inbound":{"rules":[{"protocol":"TCP"},{"port":80,"endPort":79}]}}]}}`,
			want: []string{"spec.networks[0].inbound.rules[0].port FieldValueInvalid", "spec.networks[0].inbound.rules[1].endPort FieldValueInvalid"}},
		{name: "icmp with a port", patch: `{"spec":{"networks":[{"type":"Main","inbound":{"rules":[{"protocol":"ICMP","port":8}]}}]}}`,
			want: []string{"spec.networks[0].inbound.rules[0].port FieldValueForbidden"}},
		{name: "bad sources", patch: `{"spec":{"networks":[{"type":"Main","inbound":{"rules":[{"port":22,"from":["10.0.0.1/8","2001:db8::/32","x"]}]}}]}}`,
			want: []string{"spec.networks[0].inbound.rules[0].from[0] FieldValueInvalid", "spec.networks[0].inbound.rules[0].from[1] FieldValueInvalid", "spec.networks[0].inbound.rules[0].from[2] FieldValueInvalid"},
			msg:  "did you mean 10.0.0.0/8?"},
	})
}
