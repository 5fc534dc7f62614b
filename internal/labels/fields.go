package labels

import "encoding/json"

// FieldValue is the value a field selector (fieldSelector=spec.nodeName=n1) compares at path in
// an object decoded from JSON: a string as it is, a missing field as "", and any other value
// as its JSON text.
func FieldValue(obj map[string]any, path []string) string {
	var cur any = obj
	for _, seg := range path {
		m, _ := cur.(map[string]any)
		cur = m[seg]
	}
	switch v := cur.(type) {
	case string:
		return v
	case nil:
		return ""
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}
