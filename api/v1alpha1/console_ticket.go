package v1alpha1

// SubConsoleTickets is the VirtualMachine subresource that makes a console ticket (POST, body
// ConsoleTicketRequest or empty): a browser cannot send an Authorization header on a
// websocket, so it opens the console or VNC websocket with ?ticket=TICKET instead.
const SubConsoleTickets = "consoletickets"

// ConsoleTicketRequest asks for a console ticket.
type ConsoleTicketRequest struct {
	// Stream is "console" (the serial console, the default) or "vnc".
	Stream string `json:"stream,omitempty"`
}

// ConsoleTicket is a single-use ticket for one stream of one VM, acting as the user who asked
// for it, valid until Expires (30 seconds after it was made).
type ConsoleTicket struct {
	Ticket string `json:"ticket"`
	Stream string `json:"stream"`
	// Path is the websocket's path, with the ticket as its query.
	Path    string `json:"path"`
	Expires Time   `json:"expires"`
}
