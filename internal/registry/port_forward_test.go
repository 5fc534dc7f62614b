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
