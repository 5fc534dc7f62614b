package images

import (
	"strconv"
	"strings"
)

var binaryUnits = []string{"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}

// HumanBytes writes a byte count the way Kubernetes quantities look: "512", "64Mi", "1.2Gi".
// Whole multiples of a unit have no decimals; others have one (rounded), so the result
// parses as a quantity.
func HumanBytes(n int64) string {
	if n < 1024 {
		if n < 0 {
			n = 0
		}
		return strconv.FormatInt(n, 10)
	}
	unit := int64(1)
	i := -1
	for i+1 < len(binaryUnits) && n >= unit*1024 {
		unit *= 1024
		i++
	}
	if n%unit == 0 {
		return strconv.FormatInt(n/unit, 10) + binaryUnits[i]
	}
	s := strconv.FormatFloat(float64(n)/float64(unit), 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + binaryUnits[i]
}

// HumanSpeed writes a speed in bytes per second, e.g. "12.5Mi/s".
func HumanSpeed(bps int64) string { return HumanBytes(bps) + "/s" }
