"""Forms of the data owner's pages: :mod:`~datasite.forms.decisions` on code requests and
:mod:`~datasite.forms.consent`. Every form validates everything before anything is saved."""
