package quota

// CreditRate prices one resource in credits: Credits per Per units
// (Per 0 means 1).
type CreditRate struct {
	Resource string `json:"resource"`
	Credits  int64  `json:"credits"`
	Per      int64  `json:"per,omitempty"`
}

// CreditCost prices uses at rates: per rate, the sum of the resource's
// unkeyed amounts, rounded up to a whole credit. Keyed (distinct) uses are
// not priced: whether they count is only known in the store.
func CreditCost(rates []CreditRate, uses ...[]Use) int64 {
	var total int64
	for _, rate := range rates {
		var units int64
		for _, us := range uses {
			for _, u := range us {
				if u.Resource == rate.Resource && u.Key == "" {
					units = clampSigned(units + clampSigned(u.Amount))
				}
			}
		}
		total = satAdd(total, rate.cost(units))
	}
	return total
}

func (r CreditRate) cost(units int64) int64 {
	if units <= 0 || r.Credits <= 0 {
		return 0
	}
	per := max(r.Per, 1)
	whole, rest := units/per, units%per
	if whole > MaxLimit/r.Credits {
		return MaxLimit
	}
	// rest < per and Credits are both capped, so this cannot overflow.
	return whole*r.Credits + (rest*r.Credits+per-1)/per
}
